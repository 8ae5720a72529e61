# Fit one linear mixed model with lme4 and print one JSON line (the lme4 backend of
# benchmarks/backends.py).
#
#   Rscript lme4_fit.R --csv PATH --formula "y ~ x + (1 | g)" --factors g,h [--ml]
#
# The CSV is a copy of the benchmark's Parquet file (R has no arrow package here).
# Columns named in --factors are converted with factor(); others keep their type.
# Only lmer() is timed (system.time elapsed); reading is reported separately.
# Output keys: seconds, read_seconds, nobs, method, objective (REMLcrit for REML,
# -2 logLik = deviance for ML), reml_criterion, deviance, loglik, sigma, theta,
# fixef, singular, converged, messages (checkConv, optimizer, warnings), versions.
# Exit status 3 when lme4 is not installed, so the harness can skip it.

parse_args <- function(args) {
  out <- list(csv = NULL, formula = NULL, factors = character(0), ml = FALSE,
              family = "gaussian")
  i <- 1
  while (i <= length(args)) {
    key <- args[[i]]
    if (key == "--ml") {
      out$ml <- TRUE
      i <- i + 1
      next
    }
    value <- args[[i + 1]]
    if (key == "--csv") out$csv <- value
    else if (key == "--formula") out$formula <- value
    else if (key == "--factors") out$factors <- strsplit(value, ",", fixed = TRUE)[[1]]
    else if (key == "--family") out$family <- value
    else stop("unknown argument ", key)
    i <- i + 2
  }
  if (is.null(out$csv) || is.null(out$formula)) stop("--csv and --formula are required")
  out
}

read_data <- function(path, factors) {
  if (requireNamespace("data.table", quietly = TRUE)) {
    data <- as.data.frame(data.table::fread(path, integer64 = "double", showProgress = FALSE))
  } else {
    data <- utils::read.csv(path)
  }
  for (name in factors) data[[name]] <- factor(data[[name]])
  data
}

json_value <- function(x) {
  if (is.null(x) || length(x) == 0) return(if (is.list(x)) "[]" else "null")
  if (is.list(x)) return(json_object(x))
  if (length(x) > 1 || !is.null(names(x))) {
    inner <- vapply(seq_along(x), function(i) json_value(unname(x[i])), "")
    if (is.null(names(x))) return(paste0("[", paste(inner, collapse = ","), "]"))
    return(paste0("{", paste0(json_string(names(x)), ":", inner, collapse = ","), "}"))
  }
  if (is.na(x)) return("null")
  if (is.logical(x)) return(if (x) "true" else "false")
  if (is.numeric(x)) return(if (is.finite(x)) sprintf("%.17g", x) else "null")
  json_string(as.character(x))
}

json_string <- function(s) {
  s <- gsub("\\", "\\\\", s, fixed = TRUE)
  s <- gsub("\"", "\\\"", s, fixed = TRUE)
  s <- gsub("\n", "\\n", s, fixed = TRUE)
  s <- gsub("\t", "\\t", s, fixed = TRUE)
  paste0("\"", s, "\"")
}

json_object <- function(x) {
  if (is.null(names(x))) {
    return(paste0("[", paste(vapply(x, json_value, ""), collapse = ","), "]"))
  }
  pairs <- vapply(names(x), function(k) paste0(json_string(k), ":", json_value(x[[k]])), "")
  paste0("{", paste(pairs, collapse = ","), "}")
}

fit <- function(formula, data, reml, family = "gaussian") {
  notes <- character(0)
  keep <- function(cond) {
    notes <<- c(notes, conditionMessage(cond))
    restart <- if (inherits(cond, "warning")) "muffleWarning" else "muffleMessage"
    invokeRestart(restart)
  }
  model <- NULL
  timing <- system.time(
    model <- withCallingHandlers(
      if (family == "gaussian") {
        lme4::lmer(stats::as.formula(formula), data = data, REML = reml)
      } else {
        lme4::glmer(stats::as.formula(formula), data = data, family = family)
      },
      warning = keep, message = keep
    )
  )
  list(model = model, seconds = unname(timing[["elapsed"]]), notes = notes)
}

summarise <- function(run, reml, read_seconds) {
  reml <- reml && lme4::isLMM(run$model)
  m <- run$model
  conv <- m@optinfo$conv$lme4$messages
  optimizer <- m@optinfo$message
  loglik <- as.numeric(stats::logLik(m))
  remlcrit <- if (reml) lme4::REMLcrit(m) else NA
  list(
    seconds = run$seconds, read_seconds = read_seconds, nobs = stats::nobs(m),
    method = if (reml) "REML" else "ML",
    objective = if (reml) remlcrit else -2 * loglik,
    reml_criterion = remlcrit, deviance = if (reml) NA else stats::deviance(m),
    loglik = loglik, sigma = if (lme4::isLMM(m)) stats::sigma(m) else NA, theta = as.list(unname(lme4::getME(m, "theta"))),
    fixef = as.list(lme4::fixef(m)), singular = lme4::isSingular(m),
    converged = length(conv) == 0 && length(run$notes) == 0,
    messages = as.list(unique(c(conv, run$notes))), optimizer_message = optimizer,
    lme4_version = as.character(utils::packageVersion("lme4")),
    r_version = R.version.string
  )
}

main <- function() {
  if (!requireNamespace("lme4", quietly = TRUE)) {
    message("lme4 is not installed")
    quit(status = 3)
  }
  args <- parse_args(commandArgs(trailingOnly = TRUE))
  read_timing <- system.time(data <- read_data(args$csv, args$factors))
  run <- fit(args$formula, data, reml = !args$ml, family = args$family)
  cat(json_value(summarise(run, !args$ml, unname(read_timing[["elapsed"]]))), "\n", sep = "")
}

main()
