# Golden values from lme4's glmer for sparsemm's GLMM tests.
#
# Usage: Rscript tests/golden/glmer_golden.R OUTDIR
#   (normally run through tests/golden/make_golden.py)
#
# Writes into OUTDIR, in the same formats as lme4_golden.R:
#   NAME.csv          each dataset used, once (write.csv, no row names, NA as empty;
#                     doubles written with 17 significant digits, so they round-trip)
#   NAME.levels.json  {factor column: levels(x)}, in R's level order
#   NAME.types.json   {column: "double" | "integer" | "logical" | "character" |
#                     "factor" | "ordered"}, so the Python side keeps R's column types
#   glmer_golden.json one object per case (see golden_row), full double precision
#   R_VERSIONS.txt    R, lme4 and Matrix versions
#
# Every model is fitted with glmer's defaults: nAGQ = 1 (Laplace) and glmerControl()
# (a bobyqa stage at nAGQ = 0 over theta, then Nelder_Mead over c(theta, beta)).
#
# For a GLMM lme4 defines (checked on every fit by check_definitions):
#   laplace_objective = dev_components$dev
#                     = ldL2 + ussq + family aic term (-2 * sum log p(y | mu), with the
#                       normalising constants, prior weights included)
#   loglik   = -laplace_objective / 2
#   aic, bic = -2 * loglik + (2 | log(nobs)) * (length(theta) + length(beta))
#   deviance = sum of squared deviance residuals at the conditional modes (= drsum)
suppressPackageStartupMessages({
  library(lme4)
  library(mlmRev)
  library(jsonlite)
})

# ---- datasets and cases ---------------------------------------------------------

cbpp_p <- lme4::cbpp
cbpp_p$prop <- cbpp_p$incidence / cbpp_p$size  # proportion form, with weights = size

grouseticks_c <- lme4::grouseticks
grouseticks_c$cHEIGHT <- grouseticks_c$HEIGHT - mean(grouseticks_c$HEIGHT)

# A small simulated Poisson data set with an exposure (offset log(exposure)).
# Draw order: x, exposure, b, y.  b is N(0, sd = 0.4).
simulate_poisson_offset <- function(n_groups = 40, n_per = 10) {
  set.seed(1)
  n <- n_groups * n_per
  g <- factor(sprintf("g%02d", rep(seq_len(n_groups), each = n_per)))
  x <- rnorm(n)
  exposure <- runif(n, 0.5, 3)
  b <- rnorm(n_groups, 0, 0.4)
  y <- rpois(n, exposure * exp(0.3 + 0.5 * x + b[as.integer(g)]))
  data.frame(g = g, x = x, exposure = exposure, y = y)
}

datasets <- list(
  cbpp = cbpp_p,
  grouseticks = grouseticks_c,
  VerbAgg = lme4::VerbAgg,
  Contraception = mlmRev::Contraception,
  poisson_offset = simulate_poisson_offset()
)

case <- function(name, dataset, formula, family = "binomial",
                 link = c(binomial = "logit", poisson = "log")[[family]], weights = NULL) {
  list(name = name, dataset = dataset, formula = formula, family = family, link = link,
       weights = weights)
}

cases <- list(
  case("cbpp", "cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)"),
  # Same fit as cbpp, written as a proportion with the trials as prior weights.
  case("cbpp_prop", "cbpp", "prop ~ period + (1 | herd)", weights = "size"),
  case("cbpp_probit", "cbpp", "cbind(incidence, size - incidence) ~ period + (1 | herd)",
       link = "probit"),
  case("grouseticks", "grouseticks", "TICKS ~ YEAR + cHEIGHT + (1 | BROOD) + (1 | LOCATION)",
       family = "poisson"),
  # Crossed; r2 is a factor N/Y, its first level (N) is failure.
  case("verbagg", "VerbAgg", "r2 ~ Anger + Gender + btype + situ + (1 | id) + (1 | item)"),
  case("contraception", "Contraception",
       "use ~ age + I(age^2) + urban + livch + (1 | district)"),
  case("poisson_offset", "poisson_offset", "y ~ x + offset(log(exposure)) + (1 | g)",
       family = "poisson")
)

# JSON with exact doubles and the dataset export, shared with the other golden script
source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "golden_io.R"))

# ---- fitting --------------------------------------------------------------------

family_of <- function(cs) get(cs$family, mode = "function")(link = cs$link)

# glmer with the case's formula, family and (column-name) weights; `...` is passed on
# (devFunOnly = TRUE).
fit_case <- function(cs, data, ...) {
  call <- if (is.null(cs$weights)) {
    bquote(glmer(.(as.formula(cs$formula)), data = data, family = .(family_of(cs)), ...))
  } else {
    bquote(glmer(.(as.formula(cs$formula)), data = data, family = .(family_of(cs)),
                 weights = .(as.name(cs$weights)), ...))
  }
  eval(call)
}

# The nAGQ = 1 deviance function (argument c(theta, beta)) at the optimum and at
# c(0.8 * theta, beta).  At the optimum it must reproduce the fitted Laplace objective.
devfun_at <- function(cs, data, m) {
  devfun <- fit_case(cs, data, devFunOnly = TRUE)
  theta <- unname(getME(m, "theta"))
  beta <- unname(fixef(m))
  at <- function(th) list(theta = I(th), beta = I(beta), value = devfun(c(th, beta)))
  points <- list(at(theta), at(0.8 * theta))
  objective <- m@devcomp$cmp[["dev"]]
  if (abs(points[[1]]$value - objective) > 1e-8 * abs(objective)) {
    stop(cs$name, ": devfun at the optimum ", sprintf("%.17g", points[[1]]$value),
         " != Laplace objective ", sprintf("%.17g", objective))
  }
  points
}

# lme4's definitions for a GLMM, checked on the fit: the Laplace objective is
# ldL2 + ussq + the family's aic term (-2 log p(y | mu)), logLik is minus half of it,
# and deviance() is the sum of squared deviance residuals, i.e. drsum.
check_definitions <- function(cs, m) {
  cmp <- m@devcomp$cmp
  parts <- cmp[["ldL2"]] + cmp[["ussq"]] + m@resp$aic()
  stopifnot(
    abs(parts - cmp[["dev"]]) <= 1e-10 * abs(cmp[["dev"]]),
    as.numeric(logLik(m)) == -cmp[["dev"]] / 2,
    abs(deviance(m) - cmp[["drsum"]]) <= 1e-10 * cmp[["drsum"]],
    attr(logLik(m), "df") == length(getME(m, "theta")) + length(fixef(m))
  )
}

# vcov from RX (use.hessian = FALSE) warns when it differs from the Hessian-based one,
# which is expected here; only that warning is muffled.
vcov_rx <- function(m) {
  withCallingHandlers(
    vcov(m, use.hessian = FALSE),
    warning = function(w) {
      if (grepl("finite-difference Hessian", conditionMessage(w))) invokeRestart("muffleWarning")
    }
  )
}

# ---- golden values --------------------------------------------------------------

rows_of <- function(df) {
  df[] <- lapply(df, function(col) if (is.factor(col)) as.character(col) else col)
  lapply(seq_len(nrow(df)), function(i) as.list(df[i, , drop = FALSE]))
}

sd_of <- function(v, nm) as.list(setNames(sqrt(diag(as.matrix(v))), nm))

golden_row <- function(cs) {
  data <- datasets[[cs$dataset]]
  m <- fit_case(cs, data)
  stopifnot(m@resp$family$family == cs$family, m@resp$family$link == cs$link,
            m@devcomp$dims[["nAGQ"]] == 1L)
  check_definitions(cs, m)
  vc <- as.data.frame(VarCorr(m))
  re <- as.data.frame(ranef(m, condVar = TRUE))
  fe <- fixef(m)
  list(
    name = cs$name, dataset = cs$dataset, formula = cs$formula,
    family = cs$family, link = cs$link,
    weights = cs$weights,  # NULL -> null
    nobs = nobs(m),
    ngroups = as.list(ngrps(m)),
    theta = I(unname(getME(m, "theta"))),
    beta = I(unname(fe)),
    fixef = as.list(fe),
    se = sd_of(vcov(m), names(fe)),
    se_rx = sd_of(vcov_rx(m), names(fe)),
    zvalue = as.list(setNames(coef(summary(m))[, "z value"], names(fe))),
    loglik = as.numeric(logLik(m)),
    aic = AIC(m),
    bic = BIC(m),
    deviance = deviance(m),
    laplace_objective = m@devcomp$cmp[["dev"]],
    dev_components = as.list(m@devcomp$cmp),
    varcorr = rows_of(vc[, c("grp", "var1", "var2", "vcov", "sdcor")]),
    singular = isSingular(m),
    converged_messages = as.list(as.character(m@optinfo$conv$lme4$messages)),
    ranef = rows_of(re[, c("grpvar", "term", "grp", "condval", "condsd")]),
    fitted = I(unname(head(fitted(m), 20))),
    devfun_at = devfun_at(cs, data, m)
  )
}

# ---- main -----------------------------------------------------------------------

main <- function(outdir) {
  write_golden(outdir, cases, datasets, golden_row, "glmer_golden.json")
}

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1) stop("usage: Rscript glmer_golden.R OUTDIR")
main(args[[1]])
