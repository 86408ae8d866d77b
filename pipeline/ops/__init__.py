"""Looking at the work: chunk metrics and their summaries, reports for people."""
