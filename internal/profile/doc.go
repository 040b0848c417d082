// Package profile is the prefetch profile of an image: which files a workload read when it
// started, in the order it first read them, when, and which byte ranges of them.
//
// A profile is recorded once (`lazypull profile`: the workload runs on a lazy mount whose
// filesystem calls a Recorder on every read), then pushed to the image's repository as an
// OCI 1.1 artifact whose subject is the image manifest, so that no image is rebuilt and a
// profile can be renewed at any time. A mount of the image finds it among the manifest's
// referrers and fetches the profiled chunks before the workload asks for them.
//
// # The document
//
// A JSON object, media type MediaType, the single layer of an artifact manifest whose
// artifactType is ArtifactType and whose config is "{}" of that media type:
//
//	{
//	  "subject": "sha256:...",          image manifest the profile was recorded on
//	  "created": "2025-01-02T03:04:05Z",
//	  "command": ["python3"],           the program only, never its arguments
//	  "layers":  ["sha256:...", ...],   layer blob digests, lowest first
//	  "files": [                        in first-access order
//	    {"layer": 2, "path": "usr/bin/python3.11", "at_us": 1200, "ranges": [[0, 131072]]}
//	  ]
//	}
//
// layer indexes "layers"; path is the entry's name as the layer index has it (cleaned,
// relative, "." never: only regular files are profiled); at_us is the first access in
// microseconds since the workload started, never decreasing along the list; ranges are
// [offset, length] pairs, sorted, not touching, each of positive length.
//
// Parse is strict, as befits input from a registry: the size, the number of files and of
// ranges are bounded (MaxSize, MaxFiles, MaxRanges), unknown fields and trailing data are
// refused, and every error names the file entry and field at fault.
//
// # Applying a profile to an image
//
// Plan matches a profile to the layer indexes of an image. A file is looked up in the
// layer of the same digest; a profile recorded on another version of the image (its layer
// not in the image) finds its files by path in the topmost layer that has them. A file
// that is in no layer any more, or is no longer a regular file, is skipped (stale), and the
// rest of the profile still applies.
package profile
