"""The lab book of an autoresearch effort: results.tsv, its report and plots, and the commands of analysis.py."""
