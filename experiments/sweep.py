"""Runs a sweep or a hyperparameter search of a config: see ctjax/sweep_driver.py.

  python experiments/sweep.py --config configs/default.py --sweep lr \
      --workers 2 --workdir runs/sweep-lr

(the same as `ctjax sweep ...`).
"""
from ctjax import sweep_driver

if __name__ == "__main__":
  sweep_driver.main()
