"""Transfer of a CARE backbone to keras-hub tasks (classification, detection, segmentation)."""
