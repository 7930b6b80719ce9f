"""The notebooks' exercises: each check in checks.py, run on the reader's function by the notebook's check cell
and on the solution (notebooks/solutions/) and the stub by tests/test_exercises.py."""
