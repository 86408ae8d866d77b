"""How chunks run: the executor protocol and its factory (base), what both backends share (attempts,
records of metrics, the job script), the local and the SLURM backend, the walltime model, and the
chunk job every backend runs."""
