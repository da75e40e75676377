from django.db import transaction
from django.shortcuts import get_object_or_404, redirect, render

from .forms import PhotoForm
from .models import Photo
from .tasks import make_thumbnail


def upload(request):
    """Upload a photo; its thumbnail job is enqueued in the same transaction."""
    form = PhotoForm(request.POST or None, request.FILES or None)
    if request.method == "POST" and form.is_valid():
        with transaction.atomic():
            photo = form.save()
            # The job row commits with the photo, or not at all.
            result = make_thumbnail.enqueue(photo.pk)
            photo.job_id = result.id
            photo.save(update_fields=["job_id"])
        return redirect("demo:photo", pk=photo.pk)
    photos = Photo.objects.all()[:12]
    return render(request, "demo/upload.html", {"form": form, "photos": photos})


def photo(request, pk):
    """The photo, its job's status, and the thumbnail once it is made."""
    photo = get_object_or_404(Photo, pk=pk)
    result = make_thumbnail.get_result(photo.job_id) if photo.job_id else None
    return render(request, "demo/photo.html", {"photo": photo, "result": result})
