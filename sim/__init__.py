"""mozi.sim"""
