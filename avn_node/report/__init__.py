"""Result objects returned to the archive (DESIGN §6): TID 1500 SR, CAM secondary captures, summary image."""
