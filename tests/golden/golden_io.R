# Shared by lme4_golden.R and glmer_golden.R: JSON with exact doubles and the
# dataset export (CSV + levels + types) that make_golden.py reads.

# ---- JSON with exact doubles ------------------------------------------------------
#
# jsonlite prints at most 15 significant digits (even with digits = NA or I(17)), which
# does not round-trip a double.  So every double is formatted here with "%.17g" (exact
# for IEEE doubles) and handed to toJSON verbatim.  A length-1 double becomes a JSON
# number unless wrapped in I(), which keeps it an array (as with auto_unbox).

format_doubles <- function(x) {
  if (any(is.infinite(x))) stop("cannot write Inf to JSON")
  ifelse(is.na(x), "null", sprintf("%.17g", x))
}

exact_doubles <- function(x) {
  if (is.list(x)) {
    out <- lapply(x, exact_doubles)
    names(out) <- names(x)
    out
  } else if (is.double(x)) {
    text <- format_doubles(x)
    if (length(x) == 1 && !inherits(x, "AsIs")) structure(text, class = "json")
    else structure(paste0("[", paste(text, collapse = ","), "]"), class = "json")
  } else {
    x
  }
}

write_json_file <- function(x, path, auto_unbox = TRUE) {
  json <- toJSON(exact_doubles(x), auto_unbox = auto_unbox, json_verbatim = TRUE,
                 null = "null", na = "null")
  writeLines(json, path)
}

# ---- datasets -------------------------------------------------------------------

column_type <- function(x) {
  if (is.ordered(x)) "ordered"
  else if (is.factor(x)) "factor"
  else if (is.integer(x)) "integer"
  else if (is.double(x)) "double"
  else if (is.logical(x)) "logical"
  else if (is.character(x)) "character"
  else stop("unsupported column class: ", paste(class(x), collapse = "/"))
}

export_dataset <- function(name, df, outdir) {
  df <- as.data.frame(df)
  types <- vapply(df, column_type, "")
  text <- df
  for (col in names(df)[types == "double"]) {
    x <- df[[col]]
    text[[col]] <- ifelse(is.na(x), NA_character_, sprintf("%.17g", x))  # exact
  }
  quoted <- which(types %in% c("factor", "ordered", "character"))
  write.csv(text, file.path(outdir, paste0(name, ".csv")),
            row.names = FALSE, na = "", quote = if (length(quoted)) quoted else FALSE)
  levels_of <- lapply(Filter(is.factor, df), levels)
  write_json_file(levels_of, file.path(outdir, paste0(name, ".levels.json")), auto_unbox = FALSE)
  write_json_file(as.list(types), file.path(outdir, paste0(name, ".types.json")))
}

# ---- main, shared ------------------------------------------------------------------

write_golden <- function(outdir, cases, datasets, golden_row, json_name, export = TRUE) {
  dir.create(outdir, showWarnings = FALSE, recursive = TRUE)
  used <- unique(vapply(cases, `[[`, "", "dataset"))
  if (export) for (nm in used) export_dataset(nm, datasets[[nm]], outdir)
  golden <- lapply(cases, function(cs) {
    message("fitting ", cs$name)
    golden_row(cs)
  })
  write_json_file(golden, file.path(outdir, json_name))
  writeLines(c(R.version.string,
               paste("lme4", packageVersion("lme4")),
               paste("Matrix", packageVersion("Matrix")),
               paste("mlmRev", packageVersion("mlmRev")),
               paste("jsonlite", packageVersion("jsonlite"))),
             file.path(outdir, "R_VERSIONS.txt"))
}
