"""What a user does with a trained steer besides generating: compose and scale steers (``algebra``), bake one
into a model (``merge``), carry one to another base model (``transfer``), and read what it does (``explain``).
"""
