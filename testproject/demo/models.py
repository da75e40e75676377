from django.db import models


class Photo(models.Model):
    """An uploaded image; a background job makes its thumbnail."""

    image = models.ImageField(upload_to="photos/")
    thumbnail = models.ImageField(upload_to="thumbnails/", blank=True)
    job_id = models.CharField(max_length=32, blank=True)
    uploaded_at = models.DateTimeField(auto_now_add=True)

    class Meta:
        ordering = ["-uploaded_at"]

    def __str__(self):
        return self.image.name
