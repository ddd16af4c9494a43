"""The ADM sampling harness, one concern per module: option values and requests (`request`,
`defaults`), per-sample CPU noise (`noise`), fixed-shape network calls (`chunk`), the ADM
generators (`adm`) and the entry points `run_sampling` / `run_upsampling` (`run`).

Nothing is imported here, so `evalkit.sampling.defaults` loads without torch.
"""
