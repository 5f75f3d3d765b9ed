"""mozi.hdl"""
