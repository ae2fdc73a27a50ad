"""rsft"""
