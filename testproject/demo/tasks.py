"""The demo's background job: make a thumbnail of an uploaded photo."""

from io import BytesIO
from pathlib import Path

from django.core.files.base import ContentFile

from django_bgtasks import task

from .models import Photo

THUMBNAIL_SIZE = (200, 200)


@task(queue_name="images", max_attempts=3)
def make_thumbnail(photo_id: int) -> dict:
    """Write a thumbnail of Photo ``photo_id``; return its size and URL."""
    from PIL import Image  # here: workers that never run it save 2 MB

    photo = Photo.objects.get(pk=photo_id)
    with photo.image.open("rb"), Image.open(photo.image) as image:
        image = image.convert("RGB")
        image.thumbnail(THUMBNAIL_SIZE)
        buffer = BytesIO()
        image.save(buffer, format="JPEG", quality=85)
    name = f"{Path(photo.image.name).stem}.jpg"
    photo.thumbnail.save(name, ContentFile(buffer.getvalue()), save=False)
    photo.save(update_fields=["thumbnail"])
    return {"width": image.width, "height": image.height, "url": photo.thumbnail.url}


@task
def count_photos() -> dict:
    """Run by the demo's schedule (see BGTASKS in settings): count photos."""
    return {
        "photos": Photo.objects.count(),
        "thumbnails": Photo.objects.exclude(thumbnail="").count(),
    }
