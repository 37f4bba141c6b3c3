"""Network modules: layers, backbone, feature network, heads, the detector."""
