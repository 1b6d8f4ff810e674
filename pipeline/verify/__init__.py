"""`verify`: a device/dtype checked against CPU float32 on fixed pages."""
