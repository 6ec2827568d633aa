"""Helpers, concern training: the base model and its tokenizer (`pretrained`), the Trainer and its
callbacks (`trainer`), batching (`batching`), several processes through torchrun (`distributed`).
"""
