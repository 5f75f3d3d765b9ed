"""mozi.host.devices: the device interface and its backends (model, rtl, serial)."""
