"""``densevit export CONFIG CHECKPOINT --format onnx|torch-export --out FILE``: not built yet."""
from .pending import not_built


def main(argv=None, prog=None) -> None:
    not_built('export', 'densevit export CONFIG CHECKPOINT --format onnx|torch-export --out FILE', argv)
