"""Training stages: one module per stage (``syncnet``, ``emotion_disc``, ``emogen``)."""
