"""The SLURM backend: job states, parsers of the commands' output, the command-line client, the executor."""
