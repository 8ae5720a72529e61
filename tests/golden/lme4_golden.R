# Golden values from lme4 for sparsemm's tests.
# Usage: Rscript tests/golden/lme4_golden.R OUTDIR
# Writes OUTDIR/lme4_golden.json and, per dataset, OUTDIR/NAME.csv + NAME.levels.json
# (factor levels in R's order).  Run through tests/golden/make_golden.py.
suppressPackageStartupMessages({
  library(lme4)
  library(mlmRev)
  library(jsonlite)
})

args <- commandArgs(trailingOnly = TRUE)
outdir <- if (length(args)) args[[1]] else "."

sleep <- lme4::sleepstudy
sleep$w <- 1 + (seq_len(nrow(sleep)) %% 3)

datasets <- list(
  sleepstudy = sleep,
  Penicillin = lme4::Penicillin,
  Pastes = lme4::Pastes,
  Dyestuff = lme4::Dyestuff,
  Dyestuff2 = lme4::Dyestuff2,
  InstEval = lme4::InstEval,
  Exam = mlmRev::Exam,
  cake = within(as.data.frame(lme4::cake), temperature <- NULL)
)

cases <- list(
  list("sleepstudy_reml", "sleepstudy", "Reaction ~ Days + (Days | Subject)", TRUE),
  list("sleepstudy_ml", "sleepstudy", "Reaction ~ Days + (Days | Subject)", FALSE),
  list("sleepstudy_uncorr", "sleepstudy", "Reaction ~ Days + (Days || Subject)", TRUE),
  list("sleepstudy_slope_only", "sleepstudy", "Reaction ~ Days + (0 + Days | Subject)", TRUE),
  list("sleepstudy_weights", "sleepstudy", "Reaction ~ Days + (1 | Subject)", TRUE, "w"),
  list("sleepstudy_offset", "sleepstudy", "Reaction ~ Days + offset(2 * Days) + (1 | Subject)", TRUE),
  list("penicillin", "Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)", TRUE),
  list("pastes", "Pastes", "strength ~ 1 + (1 | batch/cask)", TRUE),
  list("dyestuff", "Dyestuff", "Yield ~ 1 + (1 | Batch)", TRUE),
  list("dyestuff_ml", "Dyestuff", "Yield ~ 1 + (1 | Batch)", FALSE),
  list("dyestuff2", "Dyestuff2", "Yield ~ 1 + (1 | Batch)", TRUE),
  list("insteval", "InstEval", "y ~ service + (1 | s) + (1 | d) + (1 | dept:service)", TRUE),
  list("exam_slopes", "Exam", "normexam ~ standLRT * sex + I(standLRT^2) + (1 + standLRT | school)", TRUE),
  list("exam_ml_factors", "Exam", "normexam ~ schgend + vr + standLRT + (1 | school)", FALSE),
  list("cake_log", "cake", "angle ~ recipe + log(temp) + (1 | replicate)", TRUE),
  list("cake_interaction_group", "cake", "angle ~ recipe + temp + I(temp^2) + (1 | recipe:replicate)", TRUE)
)

export_dataset <- function(name, df) {
  write.csv(df, file.path(outdir, paste0(name, ".csv")), row.names = FALSE, na = "")
  facs <- Filter(is.factor, df)
  levs <- lapply(facs, levels)
  writeLines(toJSON(levs, auto_unbox = FALSE), file.path(outdir, paste0(name, ".levels.json")))
}

fit_case <- function(formula, data, reml, weights) {
  if (is.null(weights)) {
    lmer(as.formula(formula), data = data, REML = reml)
  } else {
    data$.w <- data[[weights]]
    lmer(as.formula(formula), data = data, REML = reml, weights = .w)
  }
}

devfun_points <- function(formula, data, reml, weights, m) {
  dd <- if (is.null(weights)) {
    lmer(as.formula(formula), data = data, REML = reml, devFunOnly = TRUE)
  } else {
    data$.w <- data[[weights]]
    lmer(as.formula(formula), data = data, REML = reml, weights = .w, devFunOnly = TRUE)
  }
  lower <- getME(m, "lower")
  opt <- getME(m, "theta")
  start <- ifelse(lower == 0, 1, 0)
  shrunk <- ifelse(lower == 0, opt * 0.7, opt)
  lapply(list(start, unname(opt), unname(shrunk)), function(th) {
    list(theta = unname(th), value = dd(unname(th)))
  })
}

rows_of <- function(df) {
  df[] <- lapply(df, function(col) if (is.factor(col)) as.character(col) else col)
  unname(lapply(seq_len(nrow(df)), function(i) as.list(df[i, , drop = FALSE])))
}

golden_row <- function(case) {
  name <- case[[1]]; dataset <- case[[2]]; formula <- case[[3]]; reml <- case[[4]]
  weights <- if (length(case) >= 5) case[[5]] else NULL
  data <- datasets[[dataset]]
  m <- fit_case(formula, data, reml, weights)
  vc <- as.data.frame(VarCorr(m))
  re <- as.data.frame(ranef(m, condVar = TRUE))
  list(
    name = name, dataset = dataset, formula = formula, REML = reml,
    weights = if (is.null(weights)) NULL else weights,
    nobs = nobs(m), ngroups = as.list(ngrps(m)),
    theta = unname(getME(m, "theta")), sigma = sigma(m),
    loglik = as.numeric(logLik(m)), aic = AIC(m), bic = BIC(m),
    remlcrit = if (reml) REMLcrit(m) else NULL,
    deviance_ml = if (reml) deviance(m, REML = FALSE) else deviance(m),
    fixef = as.list(fixef(m)), se = as.list(sqrt(diag(as.matrix(vcov(m))))),
    tvalue = setNames(as.list(coef(summary(m))[, "t value"]), names(fixef(m))),
    varcorr = rows_of(vc[, c("grp", "var1", "var2", "vcov", "sdcor")]),
    singular = isSingular(m),
    converged_messages = as.list(m@optinfo$conv$lme4$messages),
    ranef = rows_of(re[, c("grpvar", "term", "grp", "condval", "condsd")]),
    fitted = unname(head(fitted(m), 20)), resid = unname(head(residuals(m), 20)),
    devfun_at = devfun_points(formula, data, reml, weights, m)
  )
}

for (nm in names(datasets)) export_dataset(nm, datasets[[nm]])
golden <- lapply(cases, golden_row)
writeLines(
  toJSON(golden, auto_unbox = TRUE, digits = NA, null = "null", na = "null"),
  file.path(outdir, "lme4_golden.json")
)
writeLines(c(R.version.string, paste("lme4", packageVersion("lme4")),
             paste("Matrix", packageVersion("Matrix"))),
           file.path(outdir, "R_VERSIONS.txt"))
