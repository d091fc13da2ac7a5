"""The torch training program that torchrun starts; see trainer.train."""
