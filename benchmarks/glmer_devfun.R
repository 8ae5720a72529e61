# glmer's Laplace deviance (devfun, nAGQ = 1) of the EHR binary model at given points,
# with glmer's default PIRLS tolerance (tolPwrss = 1e-7) and a tight one (1e-13): how
# much of a difference between glmer's reported -2 logLik and sparsemm's is glmer's
# PIRLS stopping short rather than a different optimum.
#
#   Rscript benchmarks/glmer_devfun.R CSV "theta1,theta2,theta3,beta1,..." [more points]
#
# Fifth session, EHR 100k (benchmarks/.cache/ehr_100000_seed20240601.csv): at
# sparsemm's optimum devfun = 70323.308245 at 1e-7 and 70322.478077 at 1e-13
# (sparsemm: 70322.477973); at glmer's own optimum 70323.251384 and 70322.534094.
suppressMessages(library(lme4))
args <- commandArgs(trailingOnly = TRUE)
d <- read.csv(args[[1]])
for (f in c("patient", "physician", "hospital")) d[[f]] <- factor(d[[f]])
points <- lapply(args[-1], function(p) as.numeric(strsplit(p, ",", fixed = TRUE)[[1]]))
for (tol in c(1e-7, 1e-13)) {
  dd <- glmer(adverse ~ age + egfr + acei + (1 | patient) + (1 | physician) + (1 | hospital),
              data = d, family = binomial, devFunOnly = TRUE,
              control = glmerControl(tolPwrss = tol))
  for (p in points) cat("tolPwrss", tol, "devfun", sprintf("%.6f", dd(p)), "\n")
}
