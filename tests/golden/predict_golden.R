# Golden values for inference after the fit of LMMs (issue 6):
#   kind "predict"        lme4's predict(m, newdata, re.form, allow.new.levels = TRUE) for
#                         re.form NULL (all terms), NA (none) and single terms, plus the
#                         fixed-part standard errors sqrt(diag(X_new vcov(m) X_new')), with
#                         X_new built as predict.merMod builds it (lme4 1.1-31 has no se.fit)
#   kind "icc"            performance::icc (adjusted, conditional), insight::get_variance's
#                         components, icc(by_group = TRUE) and the design effect
#                         1 + (n / J_g - 1) ICC_g of random-intercept models
#   kind "satterthwaite"  summary(lmerTest::lmer(...))'s coefficient table (Satterthwaite df)
#
# Usage: Rscript tests/golden/predict_golden.R OUTDIR  (run through make_golden.py)
# Writes OUTDIR/predict_golden.json and the newdata tables NAME.csv/.levels.json/.types.json
# (make_golden.py turns them into tests/data/NAME.parquet); the training datasets are
# lme4_golden.R's, not exported again.  lme4's theta, sigma and beta are stored with each
# case so that the tests can also evaluate sparsemm at lme4's estimates.
suppressPackageStartupMessages({
  library(lme4)
  library(lmerTest)
  library(performance)
  library(mlmRev)
  library(jsonlite)
})

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "golden_io.R"))

sleepstudy_w <- lme4::sleepstudy
sleepstudy_w$w <- 1 + (seq_len(nrow(sleepstudy_w)) %% 3)  # as lme4_golden.R

datasets <- list(
  sleepstudy = sleepstudy_w, Penicillin = lme4::Penicillin, Pastes = lme4::Pastes,
  Dyestuff = lme4::Dyestuff, Dyestuff2 = lme4::Dyestuff2, Exam = mlmRev::Exam,
  cake = as.data.frame(lme4::cake)
)

# ---- new data: known and new levels, missing values -------------------------------
# Factor levels are deliberately in an order other than the training data's, with
# levels that were never seen in the fit.

newdata <- list(
  sleepstudy_new = data.frame(
    Days = c(0, 4.5, 9, 2, 0, 7, 3, 5, NA, 1),
    Subject = factor(c("308", "308", "309", "330", "999", "999", "1000", NA, "372", "372"),
                     levels = c("999", "372", "330", "309", "308", "1000"))
  ),
  Penicillin_new = data.frame(
    plate = factor(c("a", "b", "a", "zz", "zz", "x", NA), levels = c("zz", "x", "b", "a")),
    sample = factor(c("A", "C", "Z", "B", "Z", "F", "D"), levels = c("Z", "F", "D", "C", "B", "A"))
  ),
  Pastes_new = data.frame(
    batch = factor(c("A", "B", "A", "Q", "J", "C")),
    cask = factor(c("a", "c", "z", "a", NA, "b"))
  ),
  Exam_new = data.frame(
    school = factor(c("1", "1", "20", "65", "999", "999", "7", "12")),
    standLRT = c(0.5, -1.2, 0, 2.1, 0.3, -0.4, NA, 1),
    sex = factor(c("F", "M", "M", "F", "F", "M", "F", "M"), levels = c("M", "F")),
    schgend = factor(c("mixed", "boys", "girls", "mixed", "girls", "boys", "mixed", "girls")),
    vr = factor(c("bottom 25%", "mid 50%", "top 25%", "mid 50%", "bottom 25%", "top 25%",
                  "mid 50%", "top 25%"))
  ),
  cake_new = data.frame(
    recipe = factor(c("A", "B", "C", "A", "C")),
    temp = c(175, 190.5, 225, 200, 180),
    replicate = factor(c("1", "15", "3", "16", "99"))
  )
)

# ---- cases ----------------------------------------------------------------------

predict_case <- function(name, dataset, formula, newdata, re_forms, REML = TRUE) {
  list(kind = "predict", name = name, dataset = dataset, formula = formula,
       newdata = newdata, re_forms = re_forms, REML = REML)
}
icc_case <- function(name, dataset, formula) {
  list(kind = "icc", name = name, dataset = dataset, formula = formula, REML = TRUE)
}
satt_case <- function(name, dataset, formula, REML = TRUE, weights = NULL) {
  list(kind = "satterthwaite", name = name, dataset = dataset, formula = formula,
       REML = REML, weights = weights)
}

cases <- list(
  predict_case("predict_sleepstudy", "sleepstudy", "Reaction ~ Days + (Days | Subject)",
               "sleepstudy_new", list(NULL, "NA", "(Days | Subject)", "(1 | Subject)")),
  predict_case("predict_sleepstudy_offset", "sleepstudy",
               "Reaction ~ Days + offset(2 * Days) + (1 | Subject)", "sleepstudy_new",
               list(NULL, "NA")),
  predict_case("predict_penicillin", "Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)",
               "Penicillin_new", list(NULL, "NA", "(1 | plate)", "(1 | sample)")),
  predict_case("predict_pastes", "Pastes", "strength ~ 1 + (1 | batch/cask)", "Pastes_new",
               list(NULL, "(1 | batch)", "(1 | cask:batch)")),
  predict_case("predict_exam_factors", "Exam",
               "normexam ~ schgend + vr + standLRT + (1 | school)", "Exam_new",
               list(NULL, "NA"), REML = FALSE),
  predict_case("predict_exam_slopes", "Exam",
               "normexam ~ standLRT * sex + I(standLRT^2) + (1 + standLRT | school)", "Exam_new",
               list(NULL, "NA", "(1 | school)")),
  predict_case("predict_cake_log", "cake", "angle ~ recipe + log(temp) + (1 | replicate)",
               "cake_new", list(NULL, "NA")),
  icc_case("icc_sleepstudy_intercept", "sleepstudy", "Reaction ~ Days + (1 | Subject)"),
  icc_case("icc_sleepstudy_slope", "sleepstudy", "Reaction ~ Days + (Days | Subject)"),
  icc_case("icc_sleepstudy_uncorr", "sleepstudy", "Reaction ~ Days + (Days || Subject)"),
  icc_case("icc_penicillin", "Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
  icc_case("icc_pastes", "Pastes", "strength ~ 1 + (1 | batch/cask)"),
  icc_case("icc_dyestuff", "Dyestuff", "Yield ~ 1 + (1 | Batch)"),
  icc_case("icc_dyestuff2_singular", "Dyestuff2", "Yield ~ 1 + (1 | Batch)"),
  icc_case("icc_exam_factors", "Exam", "normexam ~ standLRT + sex + schgend + (1 | school)"),
  icc_case("icc_exam_slopes", "Exam",
           "normexam ~ standLRT * sex + I(standLRT^2) + (1 + standLRT | school)"),
  satt_case("satt_sleepstudy", "sleepstudy", "Reaction ~ Days + (Days | Subject)"),
  satt_case("satt_sleepstudy_ml", "sleepstudy", "Reaction ~ Days + (Days | Subject)",
            REML = FALSE),
  satt_case("satt_sleepstudy_weights", "sleepstudy", "Reaction ~ Days + (1 | Subject)",
            weights = "w"),
  satt_case("satt_exam_factors", "Exam", "normexam ~ standLRT + sex + schgend + (1 | school)"),
  satt_case("satt_exam_ml_factor", "Exam", "normexam ~ schgend + vr + standLRT + (1 | school)",
            REML = FALSE),
  satt_case("satt_exam_slopes", "Exam",
            "normexam ~ standLRT * sex + I(standLRT^2) + (1 + standLRT | school)"),
  satt_case("satt_penicillin", "Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
  satt_case("satt_pastes", "Pastes", "strength ~ 1 + (1 | batch/cask)")
)

# ---- fitting ----------------------------------------------------------------------

fit_lmer <- function(cs, data, fun = lme4::lmer) {
  call <- if (is.null(cs$weights)) {
    bquote(fun(.(as.formula(cs$formula)), data = data, REML = .(cs$REML)))
  } else {
    bquote(fun(.(as.formula(cs$formula)), data = data, REML = .(cs$REML),
               weights = .(as.name(cs$weights))))
  }
  eval(call)
}

estimates <- function(m) {
  list(theta = I(unname(getME(m, "theta"))), sigma = sigma(m), beta = as.list(fixef(m)))
}

versions <- function() {
  pkgs <- c("lme4", "lmerTest", "performance", "insight", "numDeriv")
  as.list(setNames(vapply(pkgs, function(p) as.character(packageVersion(p)), ""), pkgs))
}

# X_new exactly as predict.merMod builds it, so that se.fit = sqrt(diag(X V X'))
fixed_matrix <- function(m, nd) {
  X <- getME(m, "X")
  RHS <- formula(substitute(~R, list(R = lme4:::RHSForm(formula(m, fixed.only = TRUE)))))
  levs <- lme4:::get.orig.levs(m, fixed.only = TRUE, newdata = nd)
  mf <- model.frame(delete.response(terms(m, fixed.only = TRUE, data = nd)), nd,
                    na.action = na.pass, xlev = levs)
  model.matrix(RHS, data = mf, contrasts.arg = attr(X, "contrasts"))
}

re_form_of <- function(text) {
  if (is.null(text)) NULL else if (identical(text, "NA")) NA else as.formula(paste("~", text))
}

predict_row <- function(cs, m) {
  nd <- newdata[[cs$newdata]]
  preds <- lapply(cs$re_forms, function(rf) {
    fit <- predict(m, newdata = nd, re.form = re_form_of(rf), allow.new.levels = TRUE)
    list(re_form = rf, fit = I(unname(fit)))
  })
  X <- fixed_matrix(m, nd)
  se <- sqrt(rowSums((X %*% as.matrix(vcov(m))) * X))
  list(newdata = cs$newdata, dataset = cs$newdata, nrow = nrow(nd), predictions = preds,
       se_fit = I(unname(se)))
}

icc_row <- function(cs, m) {
  v <- insight::get_variance(m, verbose = FALSE)
  ic <- suppressWarnings(performance::icc(m))
  ok <- is.data.frame(ic)
  random_intercepts <- all(vapply(VarCorr(m), function(s) identical(rownames(s), "(Intercept)"),
                                  TRUE))
  by_group <- if (ok && random_intercepts) performance::icc(m, by_group = TRUE) else NULL
  groups <- if (is.null(by_group)) list() else
    setNames(as.list(by_group$ICC), by_group$Group)
  ngroups <- ngrps(m)
  deff <- lapply(setNames(names(groups), names(groups)), function(g)
    1 + (nobs(m) / ngroups[[g]] - 1) * groups[[g]])
  list(icc_adjusted = if (ok) ic$ICC_adjusted else NA_real_,
       icc_conditional = if (ok) ic$ICC_conditional else NA_real_,
       var_fixed = if (is.null(v$var.fixed)) NA_real_ else v$var.fixed,
       var_random = if (is.null(v$var.random)) NA_real_ else v$var.random,
       var_residual = if (is.null(v$var.residual)) NA_real_ else v$var.residual,
       icc_by_group = groups, design_effect = deff, nobs = nobs(m),
       ngroups = as.list(ngroups))
}

satt_row <- function(cs, m) {
  data <- datasets[[cs$dataset]]
  mt <- fit_lmer(cs, data, fun = lmerTest::lmer)
  ct <- coef(summary(mt))
  coefs <- lapply(setNames(seq_len(nrow(ct)), rownames(ct)), function(i)
    list(estimate = ct[i, "Estimate"], se = ct[i, "Std. Error"], df = ct[i, "df"],
         t = ct[i, "t value"], p = ct[i, "Pr(>|t|)"]))
  list(weights = cs$weights, coef = coefs, vcov_varpar = I(as.vector(mt@vcov_varpar)))
}

golden_row <- function(cs) {
  data <- datasets[[cs$dataset]]
  m <- fit_lmer(cs, data)
  row <- switch(cs$kind, predict = predict_row(cs, m), icc = icc_row(cs, m),
                satterthwaite = satt_row(cs, m))
  c(list(kind = cs$kind, name = cs$name, uses_dataset = cs$dataset, formula = cs$formula,
         REML = cs$REML), row, estimates(m), list(versions = versions()))
}

main <- function(outdir) {
  dir.create(outdir, showWarnings = FALSE, recursive = TRUE)
  for (nm in names(newdata)) export_dataset(nm, newdata[[nm]], outdir)
  write_golden(outdir, cases, datasets, golden_row, "predict_golden.json", export = FALSE)
}

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1) stop("usage: Rscript predict_golden.R OUTDIR")
main(args[[1]])
