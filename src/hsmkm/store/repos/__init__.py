"""One repository per aggregate; each holds that aggregate's SQL."""
