"""Demo data shipped with tunelab, so the demo runs where no dataset is at hand."""
