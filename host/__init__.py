"""mozi.host"""
