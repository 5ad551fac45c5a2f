"""tritium.models"""
