"""The study's report: Table 1 beside the paper's, claim checks, figures, and the report files."""
