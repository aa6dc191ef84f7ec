"""The built-in playground's pretrained base: its recipe (``base``) and pre-training stream
(``sequences``). The engine never imports this package: entry points (the CLI, ``train()``, the
sweep runner) resolve ``model=playground`` to the base's checkpoint directory here."""
