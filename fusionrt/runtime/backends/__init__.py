"""One module per backend; each defines one :class:`fusionrt.runtime.runner.Runner` subclass."""
