"""How chunks run: one executor protocol (base), a local and a SLURM backend, the walltime model,
the job script and the chunk job every backend runs."""
