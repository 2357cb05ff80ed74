"""The ground floor: what `algorithms/`, `envs/` and the harness (`bench/`) all use, importing nothing
of the project. Errors the CLI shows as one line, atomic file writes, cache paths and the layout of a
run directory (`RunStore`)."""
