"""From photos to alpha mattes and what users keep of them: ``predict`` (one path from photo to
alpha), ``files`` (apply.py's threaded file pipeline), ``cutout`` (foreground colours, cut-outs,
composites) and ``evaluate`` (test_stage2.py's pairing and scoring of folders)."""
