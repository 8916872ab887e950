"""The model: where the base comes from (source), how it is loaded (load), the tuned weights on top
(adapters), and the batches and answer-token loss that training and evaluation share (batching)."""
