"""mozi.firmware"""
