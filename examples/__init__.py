"""Dataset factories to copy from: data.dataset = "examples.diabetes:make" and the like,
importable from the repository root (mpt puts the working directory on sys.path)."""
