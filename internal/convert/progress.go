package convert

import (
	v1 "github.com/google/go-containerregistry/pkg/v1"
)

// Layer describes one distinct source layer on its way through Convert. A layer that several
// images (platforms) share is converted once and reported once, under the first image.
type Layer struct {
	Image  string        // the image it was first found in, as messages name it
	Source v1.Descriptor // as the source manifest lists it
	Copied bool          // already a lazypull layer: copied unchanged

	// Set by the time of LayerDone.
	Result                 v1.Descriptor // the layer as the converted manifest lists it
	Entries, Files, Chunks int           // from format.Result; zero for a copied layer
	Profiled               int           // files laid out first by Options.Profile
}

// Progress hears about layers as Convert works on them. Its methods are called from several
// goroutines at once and must return quickly.
type Progress interface {
	// LayerStart: the layer's blob is being read.
	LayerStart(l Layer)
	// LayerRead: read bytes of the source blob (of l.Source.Size) have been read so far.
	LayerRead(source v1.Hash, read int64)
	// LayerPush: conversion finished; the result is being written to the destination.
	LayerPush(l Layer)
	// LayerDone: the converted layer is in the destination.
	LayerDone(l Layer)
}

type nopProgress struct{}

func (nopProgress) LayerStart(Layer)         {}
func (nopProgress) LayerRead(v1.Hash, int64) {}
func (nopProgress) LayerPush(Layer)          {}
func (nopProgress) LayerDone(Layer)          {}
