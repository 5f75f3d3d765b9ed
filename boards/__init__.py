"""mozi.boards"""
