"""The Batch API's durable work (docs/batches.md): file and batch records, the input file's
validation and its chunks, the durable chunk queue (SQLite or Redis), the workers that run the
chunks through the embedder, and each batch's end. Below the runtime: it reaches the running
gateway only through `work.Gateway`, a Protocol the runtime's `Services` satisfies."""
