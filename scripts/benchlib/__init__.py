"""What scripts/bench.py times, apart from its figures: the plain-PyTorch references (refs), cnnlab's side of
each measurement (runs), the generated data (data) and the clock that alternates the two sides (timing)."""
