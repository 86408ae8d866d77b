"""The SLURM backend: the command-line client and its parsers, job states, and the executor."""
