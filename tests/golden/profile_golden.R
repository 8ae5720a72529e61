# Golden values for profile-likelihood confidence intervals: lme4's
# confint(m, method = "profile") (profile.merMod, then confint.thpr's spline inversion).
#
# Usage: Rscript tests/golden/profile_golden.R OUTDIR  (run through make_golden.py)
# Writes OUTDIR/profile_golden.json, one object per case:
#   name, uses_dataset, formula, REML, weights (a column name or null), level,
#   deviance   the ML deviance the profile is centred on (lme4 refits REML fits by ML),
#   intervals  {row name: {lower, upper}} with lme4's row names (.sig01, .sigma,
#              (Intercept), ...); a bound lme4 cannot reach is its parameter's limit
#              (0 for an SD, -1/1 for a correlation), as confint.thpr reports it.
#   offset_intervals (cases with prior weights only) {fixed effect: {lower, upper}}: the
#              roots of zeta found with uniroot() on the ML deviance of lmer() fits with
#              beta_j held by an offset.  lme4 1.1-31's profile of the fixed effects is
#              wrong under prior weights (its reduced-model deviance and the base
#              deviance do not both subtract sum(log w); cf. lme4 issue #192): it warns
#              "non-monotonic profile" and gives intervals ~100 times too narrow, so
#              sparsemm's fixed-effect bounds are checked against these roots instead.
# The datasets are lme4_golden.R's (tests/data/*.parquet), not exported again; the
# weights are the same deterministic 1 + (row %% 3).
suppressPackageStartupMessages({
  library(lme4)
  library(jsonlite)
})

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "golden_io.R"))

sleepstudy_w <- lme4::sleepstudy
sleepstudy_w$w <- 1 + (seq_len(nrow(sleepstudy_w)) %% 3)  # as lme4_golden.R

datasets <- list(sleepstudy = sleepstudy_w, Dyestuff = lme4::Dyestuff,
                 Dyestuff2 = lme4::Dyestuff2, Penicillin = lme4::Penicillin,
                 Pastes = lme4::Pastes)

case <- function(name, dataset, formula, REML = TRUE, weights = NULL) {
  list(name = name, dataset = dataset, formula = formula, REML = REML, weights = weights)
}

cases <- list(
  case("sleepstudy_reml", "sleepstudy", "Reaction ~ Days + (Days | Subject)"),
  case("sleepstudy_ml", "sleepstudy", "Reaction ~ Days + (Days | Subject)", REML = FALSE),
  case("dyestuff", "Dyestuff", "Yield ~ 1 + (1 | Batch)"),
  case("dyestuff2", "Dyestuff2", "Yield ~ 1 + (1 | Batch)"),  # singular: lower SD bound 0
  case("penicillin", "Penicillin", "diameter ~ 1 + (1 | plate) + (1 | sample)"),
  case("pastes", "Pastes", "strength ~ 1 + (1 | batch/cask)"),
  case("sleepstudy_weights", "sleepstudy", "Reaction ~ Days + (1 | Subject)", weights = "w")
)

fit_case <- function(cs) {
  data <- datasets[[cs$dataset]]
  if (is.null(cs$weights)) {
    lmer(as.formula(cs$formula), data = data, REML = cs$REML)
  } else {
    data$.w <- data[[cs$weights]]
    lmer(as.formula(cs$formula), data = data, REML = cs$REML, weights = .w)
  }
}

as_intervals <- function(ci) {
  lapply(setNames(seq_len(nrow(ci)), rownames(ci)),
         function(i) list(lower = ci[i, 1], upper = ci[i, 2]))
}

# zeta of beta_j = b from the ML deviance of the model with beta_j held by an offset
offset_zeta <- function(ml, cs, j, b) {
  data <- datasets[[cs$dataset]]
  X <- getME(ml, "X")
  data$.y <- getME(ml, "y")
  data$.w <- data[[cs$weights]]
  data$.off <- X[, j] * b
  data$.Xr <- X[, -j, drop = FALSE]
  bars <- vapply(findbars(as.formula(cs$formula)), function(t) paste0("(", deparse(t), ")"), "")
  rhs <- paste(c("0", if (ncol(X) > 1) ".Xr", "offset(.off)", bars), collapse = " + ")
  m <- lmer(as.formula(paste(".y ~", rhs)), data = data, REML = FALSE, weights = .w)
  sign(b - fixef(ml)[[j]]) * sqrt(max(deviance(m) - deviance(ml), 0))
}

offset_intervals <- function(m, cs, level) {
  ml <- refitML(m)
  z <- qnorm((1 + level) / 2)
  se <- sqrt(diag(as.matrix(vcov(ml))))
  ci <- t(vapply(seq_along(fixef(ml)), function(j) {
    root <- function(side) {
      ends <- fixef(ml)[[j]] + side * c(0, 3 * z * se[[j]])
      uniroot(function(b) offset_zeta(ml, cs, j, b) - side * z, sort(ends), tol = 1e-10)$root
    }
    c(root(-1), root(1))
  }, c(0, 0)))
  rownames(ci) <- names(fixef(ml))
  as_intervals(ci)
}

golden_row <- function(cs) {
  m <- fit_case(cs)
  ci <- confint(m, method = "profile", level = 0.95, quiet = TRUE)
  row <- list(
    name = cs$name, uses_dataset = cs$dataset, formula = cs$formula, REML = cs$REML,
    weights = cs$weights, level = 0.95,
    deviance = deviance(refitML(m)),
    intervals = as_intervals(ci)
  )
  if (!is.null(cs$weights)) row$offset_intervals <- offset_intervals(m, cs, 0.95)
  row
}

main <- function(outdir) {
  write_golden(outdir, cases, datasets, golden_row, "profile_golden.json", export = FALSE)
}

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1) stop("usage: Rscript profile_golden.R OUTDIR")
main(args[[1]])
