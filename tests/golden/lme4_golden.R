# Golden values from lme4 for sparsemm's tests.
#
# Usage: Rscript tests/golden/lme4_golden.R OUTDIR
#   (normally run through tests/golden/make_golden.py)
#
# Writes into OUTDIR:
#   NAME.csv          each dataset used, once (write.csv, no row names, NA as empty;
#                     doubles written with 17 significant digits, so they round-trip)
#   NAME.levels.json  {factor column: levels(x)}, in R's level order
#   NAME.types.json   {column: "double" | "integer" | "logical" | "character" |
#                     "factor" | "ordered"}, so the Python side keeps R's column types
#   lme4_golden.json  one object per case (see golden_row), full double precision
#   R_VERSIONS.txt    R, lme4 and Matrix versions
#
# Every model is fitted with lme4's defaults (lmerControl(), optimizer nloptwrap).
suppressPackageStartupMessages({
  library(lme4)
  library(mlmRev)
  library(jsonlite)
})

# ---- datasets and cases ---------------------------------------------------------

sleepstudy_w <- lme4::sleepstudy
sleepstudy_w$w <- 1 + (seq_len(nrow(sleepstudy_w)) %% 3)  # deterministic weights

datasets <- list(
  sleepstudy = sleepstudy_w,
  Penicillin = lme4::Penicillin,
  Pastes = lme4::Pastes,
  Dyestuff = lme4::Dyestuff,
  Dyestuff2 = lme4::Dyestuff2,
  InstEval = lme4::InstEval,
  Exam = mlmRev::Exam,
  cake = as.data.frame(lme4::cake)
)

case <- function(name, dataset, formula, REML = TRUE, weights = NULL) {
  list(name = name, dataset = dataset, formula = formula, REML = REML, weights = weights)
}

cases <- list(
  case("sleepstudy_reml", "sleepstudy", "Reaction ~ Days + (Days | Subject)"),
  case("sleepstudy_ml", "sleepstudy", "Reaction ~ Days + (Days | Subject)", REML = FALSE),
  case("sleepstudy_uncorr", "sleepstudy", "Reaction ~ Days + (Days || Subject)"),
  case("sleepstudy_nointercept_slope", "sleepstudy", "Reaction ~ Days + (0 + Days | Subject)"),
  case("penicillin", "Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
  case("pastes", "Pastes", "strength ~ 1 + (1 | batch/cask)"),
  case("dyestuff", "Dyestuff", "Yield ~ 1 + (1 | Batch)"),
  case("dyestuff_ml", "Dyestuff", "Yield ~ 1 + (1 | Batch)", REML = FALSE),
  case("dyestuff2", "Dyestuff2", "Yield ~ 1 + (1 | Batch)"),  # singular fit
  case("insteval", "InstEval", "y ~ service + (1 | s) + (1 | d) + (1 | dept:service)"),
  case("exam_slopes", "Exam",
       "normexam ~ standLRT * sex + I(standLRT^2) + (1 + standLRT | school)"),
  # mlmRev's Exam has no column `vrband`; the verbal-reasoning band is `vr`.
  case("exam_ml_factor", "Exam", "normexam ~ schgend + vr + standLRT + (1 | school)",
       REML = FALSE),
  case("sleepstudy_weights", "sleepstudy", "Reaction ~ Days + (1 | Subject)", weights = "w"),
  case("sleepstudy_offset", "sleepstudy",
       "Reaction ~ Days + offset(2 * Days) + (1 | Subject)"),
  # cake's `temperature` is an ordered factor (polynomial contrasts), so these use
  # the numeric `temp` and keep treatment contrasts throughout.
  case("cake_quadratic", "cake", "angle ~ recipe + temp + I(temp^2) + (1 | recipe:replicate)"),
  case("cake_log", "cake", "angle ~ recipe + log(temp) + (1 | replicate)")
)

# JSON with exact doubles and the dataset export, shared with the other golden script
source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "golden_io.R"))

# ---- fitting --------------------------------------------------------------------

# lmer with the case's formula, REML setting and (column-name) weights; `...` is
# passed on (devFunOnly = TRUE).
fit_case <- function(cs, data, ...) {
  call <- if (is.null(cs$weights)) {
    bquote(lmer(.(as.formula(cs$formula)), data = data, REML = .(cs$REML), ...))
  } else {
    bquote(lmer(.(as.formula(cs$formula)), data = data, REML = .(cs$REML),
                weights = .(as.name(cs$weights)), ...))
  }
  eval(call)
}

# The three thetas at which the profiled objective is evaluated: lme4's start (1 on
# the diagonal of the relative covariance factor, 0 off it; diagonal entries are
# those with lower bound 0), the optimum, and the optimum with its diagonal entries
# times 0.7 (off-diagonal entries unchanged).
theta_points <- function(m) {
  diag_entry <- getME(m, "lower") == 0
  opt <- unname(getME(m, "theta"))
  list(start = ifelse(diag_entry, 1, 0), optimum = opt,
       shrunk = ifelse(diag_entry, 0.7 * opt, opt))
}

devfun_at <- function(cs, data, m) {
  devfun <- fit_case(cs, data, devFunOnly = TRUE)
  points <- theta_points(m)
  evaluated <- lapply(unname(points), function(th) list(theta = I(th), value = devfun(th)))
  # Fixed effects at the start theta: re-evaluate there and read beta off the
  # predictor module in the deviance function's environment.
  devfun(points$start)
  beta <- environment(devfun)$pp$beta(1)
  list(devfun_at = evaluated, fixef_at_start = as.list(setNames(beta, names(fixef(m)))))
}

# ---- golden values --------------------------------------------------------------

rows_of <- function(df) {
  df[] <- lapply(df, function(col) if (is.factor(col)) as.character(col) else col)
  lapply(seq_len(nrow(df)), function(i) as.list(df[i, , drop = FALSE]))
}

golden_row <- function(cs) {
  data <- datasets[[cs$dataset]]
  m <- fit_case(cs, data)
  vc <- as.data.frame(VarCorr(m))
  re <- as.data.frame(ranef(m, condVar = TRUE))
  fe <- fixef(m)
  at <- devfun_at(cs, data, m)
  list(
    name = cs$name, dataset = cs$dataset, formula = cs$formula, REML = cs$REML,
    weights = cs$weights,  # NULL -> null
    nobs = nobs(m),
    ngroups = as.list(ngrps(m)),
    theta = I(unname(getME(m, "theta"))),
    sigma = sigma(m),
    loglik = as.numeric(logLik(m)),
    aic = AIC(m),
    bic = BIC(m),
    remlcrit = if (cs$REML) REMLcrit(m) else NULL,
    deviance_ml = if (cs$REML) deviance(m, REML = FALSE) else deviance(m),
    fixef = as.list(fe),
    se = as.list(setNames(sqrt(diag(as.matrix(vcov(m)))), names(fe))),
    tvalue = as.list(setNames(coef(summary(m))[, "t value"], names(fe))),
    varcorr = rows_of(vc[, c("grp", "var1", "var2", "vcov", "sdcor")]),
    singular = isSingular(m),
    converged_messages = as.list(as.character(m@optinfo$conv$lme4$messages)),
    ranef = rows_of(re[, c("grpvar", "term", "grp", "condval", "condsd")]),
    fitted = I(unname(head(fitted(m), 20))),
    resid = I(unname(head(residuals(m), 20))),
    devfun_at = at$devfun_at,
    fixef_at_start = at$fixef_at_start
  )
}

# ---- main -----------------------------------------------------------------------

main <- function(outdir) {
  write_golden(outdir, cases, datasets, golden_row, "lme4_golden.json")
}

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1) stop("usage: Rscript lme4_golden.R OUTDIR")
main(args[[1]])
