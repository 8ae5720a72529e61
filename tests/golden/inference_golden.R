# Golden values for inference after the fit: lme4's anova() likelihood-ratio test of
# nested models (REML fits refitted by ML, as lme4 does) and Wald intervals of the
# fixed effects (confint(method = "Wald")).
#
# Usage: Rscript tests/golden/inference_golden.R OUTDIR  (run through make_golden.py)
# Writes OUTDIR/inference_golden.json (one object per comparison); the datasets are
# lme4_golden.R's (tests/data/sleepstudy.parquet, Exam.parquet), not exported again.
suppressPackageStartupMessages({
  library(lme4)
  library(mlmRev)
  library(jsonlite)
})

source(file.path(dirname(sub("^--file=", "", grep("^--file=", commandArgs(FALSE), value = TRUE)[1])), "golden_io.R"))

datasets <- list(sleepstudy = lme4::sleepstudy, Exam = mlmRev::Exam)

cases <- list(
  list(name = "sleepstudy_slope", dataset = "sleepstudy", REML = TRUE,
       small = "Reaction ~ Days + (1 | Subject)", big = "Reaction ~ Days + (Days | Subject)"),
  list(name = "exam_fixed", dataset = "Exam", REML = FALSE,
       small = "normexam ~ standLRT + (1 | school)",
       big = "normexam ~ standLRT + sex + schgend + (1 | school)")
)

model_row <- function(m) {
  list(npar = attr(logLik(m), "df"), aic = AIC(m), bic = BIC(m),
       loglik = as.numeric(logLik(m)), deviance = deviance(m))
}

golden_row <- function(cs) {
  data <- datasets[[cs$dataset]]
  small <- lmer(as.formula(cs$small), data = data, REML = cs$REML)
  big <- lmer(as.formula(cs$big), data = data, REML = cs$REML)
  a <- anova(small, big)  # refits by ML when needed
  ci <- confint(big, method = "Wald", parm = "beta_")
  list(
    name = cs$name, uses_dataset = cs$dataset, REML = cs$REML, small = cs$small, big = cs$big,
    chisq = a[["Chisq"]][[2]], df = a[["Df"]][[2]], p = a[["Pr(>Chisq)"]][[2]],
    models = list(small = as.list(a[1, c("npar", "AIC", "BIC", "logLik", "deviance")]),
                  big = as.list(a[2, c("npar", "AIC", "BIC", "logLik", "deviance")])),
    wald = lapply(setNames(seq_len(nrow(ci)), rownames(ci)),
                  function(i) list(lower = ci[i, 1], upper = ci[i, 2]))
  )
}

main <- function(outdir) {
  write_golden(outdir, cases, datasets, golden_row, "inference_golden.json", export = FALSE)
}

args <- commandArgs(trailingOnly = TRUE)
if (length(args) != 1) stop("usage: Rscript inference_golden.R OUTDIR")
main(args[[1]])
