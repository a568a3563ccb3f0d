"""Pure tensor math shared by every model: boxes, matching, losses, post-processing."""
