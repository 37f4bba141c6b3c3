"""Weight files: safe loading, the official registry, checkpoint conversion, pretrained backbones."""
