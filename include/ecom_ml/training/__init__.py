"""Training DAG steps shared by every model kind."""
