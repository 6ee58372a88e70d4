"""Optional dependencies: one import helper, so that a missing one says in one
line which extra of pynas installs it (``pip install "pynas[plots]"``)."""
import importlib

# What each extra of pyproject.toml provides (module -> extra).
EXTRAS = {
    "matplotlib": "plots",
    "torchvision": "data",
    "tensorboard": "tensorboard",
    "scipy": "data",
}


class MissingDependency(ImportError, RuntimeError):
    """An optional dependency is not installed; the message names the extra.

    Also a RuntimeError, so that the commands' usual error handling prints it
    as one line instead of a traceback."""


def require(module: str, extra: str = None, needed_for: str = None):
    """``import module``, or a :class:`MissingDependency` naming the extra to install.

    ``needed_for`` says what asked for it ("--dataset svhn", "plots").
    """
    try:
        return importlib.import_module(module)
    except ImportError as e:
        extra = extra or EXTRAS.get(module)
        missing = getattr(e, "name", None) or module.split(".")[0]
        what = f" for {needed_for}" if needed_for else ""
        hint = f'pip install "pynas[{extra}]"' if extra else f"pip install {missing}"
        raise MissingDependency(f"pynas needs {missing}{what}: {hint}") from e
