"""Train stage: model loading, PEFT setup and the Trainer."""
